"""Pure decision logic: knowledge, matching, the responder. No Flask, no HTTP, no WeChat."""
