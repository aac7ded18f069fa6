"""Sample relying services built on `idp.rp`: copy one to start a provincial service."""
