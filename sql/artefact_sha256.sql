-- The manifest's sha256 and size in bytes of one artefact (no row when it was never recorded).
-- internal
-- param path VARCHAR: the artefact's path relative to the store
SELECT sha256, bytes FROM manifest WHERE path = $path;
