"""The WeChat protocol edge: push crypto and parsing, the webhook, the sender and its tokens, the API sandbox."""
