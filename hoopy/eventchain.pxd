# The C declarations eventchain.py uses when compiled (Cython's pure-Python mode reads
# this file beside the .py): OpenSSL's SHA-256, from the libcrypto Python's hashlib
# itself links (setup.py links the extension with it; see eventchain._sha256_hex).
cdef extern from "openssl/sha.h":
    ctypedef struct SHA256_CTX:
        pass
    int SHA256_Init(SHA256_CTX *c) nogil
    int SHA256_Update(SHA256_CTX *c, const void *data, size_t n) nogil
    int SHA256_Final(unsigned char *md, SHA256_CTX *c) nogil
