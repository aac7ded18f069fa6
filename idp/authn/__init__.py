"""How a resident proves who they are: carrier verification, sessions, assurance and lockouts (no Flask here)."""
