"""Raw primitives (X25519+HKDF, AES-CTR PRG, AES-GCM, Ed25519, Shamir). Not for users: no misuse protection
beyond argument checks. Everything here wraps `cryptography`; randomness comes from the OS CSPRNG."""
