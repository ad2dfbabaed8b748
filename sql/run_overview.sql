-- One run's row with its dataset name: mode, protocol, prompts, model, status, timings, config.
-- param run_id VARCHAR: the run
SELECT r.run_id, r.mode, r.protocol, r.prompt_set, r.model_id, r.model_sha256, r.dataset_id, d.name AS dataset,
       d.manifest_sha256, r.status, r.train_seconds, r.extract_seconds, r.device, r.config, r.versions
FROM runs r JOIN datasets d USING (dataset_id)
WHERE r.run_id = $run_id;
