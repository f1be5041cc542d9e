"""wanserve's torch-free half: the HTTP API and the contracts the worker shares with it."""
