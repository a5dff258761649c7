def handle(req):
    """Answers with the request body."""
    return req
