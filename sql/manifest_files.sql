-- Every artefact in the manifest with its expected sha256 and size.
-- internal
SELECT path, kind, run_id, table_name, sha256, bytes FROM manifest ORDER BY path;
