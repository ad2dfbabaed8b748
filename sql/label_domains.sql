-- The clinical domain of each of the given labels, as ingest registered it in label_names (a label of
-- a dataset's own set: its set's domain, `Normal` for its normal label; any other: `Other`).
-- internal
-- param labels VARCHAR: (a list of label names, bound as VARCHAR[])
SELECT label, domain FROM label_names WHERE list_contains($labels::VARCHAR[], label) ORDER BY position;
