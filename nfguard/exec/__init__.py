"""`nfguard exec`: one command and everything it starts, under a policy of its own."""
