-- One dataset's row: id, format, source, manifest hash, sample count, split method and seed, how labels were read
-- (label set, uncertain policy, ...), ingest's checks.
-- param dataset VARCHAR: the dataset's name
SELECT dataset_id, name, format, source, manifest_sha256, n_samples, split_method, split_seed,
       json_array_length(skipped) AS n_skipped, options, checks, created_at
FROM datasets WHERE name = $dataset;
