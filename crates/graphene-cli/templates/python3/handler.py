# Loaded once per replica: put slow set-up (loading a model) at module level
# and it stays in memory across requests.


def handle(req):
    """Handle a request to the function.

    Args:
        req (str): the request body
    """
    return req
