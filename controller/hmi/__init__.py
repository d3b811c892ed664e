"""The operator's web HMI, served by the controller on its API port: the page (static/), browser
sessions (sessions.py) and who is asking (access.py)."""
