-- The manifest's sha256 of one artefact (None when it was never recorded).
-- internal
-- param path VARCHAR: the artefact's path relative to the store
SELECT sha256 FROM manifest WHERE path = $path;
