"""The federation's PKI: CA, per-role TLS certificates, client signing identities, the peer-certificate cache."""
