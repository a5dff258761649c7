#!/bin/sh
# Runs once per request: the request body is on stdin, what you print is the
# response. Request details are in $Http_Method, $Http_Path, $Http_Query and
# $Http_<Header> (for example $Http_Content_Type).
tr '[:lower:]' '[:upper:]'
