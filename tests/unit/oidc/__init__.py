"""Unit tests of idp/oidc: a package, so that module names may repeat those of tests/integration."""
