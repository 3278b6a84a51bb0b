"""The crash run: the daemon killed with SIGKILL at random moments and restarted (issue 9)."""
