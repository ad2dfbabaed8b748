-- Record a new run as running, with its provenance.
-- internal
-- param run_id VARCHAR: run id
INSERT INTO runs (run_id, mode, protocol, model_id, model_sha256, dataset_id, prompt_set, config, status,
                  started_at, device, versions)
VALUES ($run_id, $mode, $protocol, $model_id, $model_sha256, $dataset_id, $prompt_set, $config, 'running',
        $started_at, $device, $versions);
