"""`python -m nfguard` runs the command line."""

from nfguard.cli import main

raise SystemExit(main())
