# Loaded once per replica: put slow set-up (loading a model) at module level
# and it stays in memory across requests.


def handle(event, context):
    """Handle a request to the function.

    event.body (bytes), event.headers (dict), event.method, event.query (dict),
    event.path; return a dict with statusCode, body and headers, or a string.
    """
    return {
        "statusCode": 200,
        "body": "Hello from graphene!",
    }
