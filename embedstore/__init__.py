"""embedstore: extract CLIP-style embeddings once into a store, then analyse the cached vectors."""

__version__ = "0.1.0"

#: Version of the store layout and schema this code reads and writes. A store with another
#: version is refused, never migrated silently.
SCHEMA_VERSION = 1
