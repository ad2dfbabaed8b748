-- Every run with its mode, protocol, model, dataset, status, timings and number of embeddings.
SELECT r.run_id, r.mode, r.protocol, r.model_id, d.name AS dataset, r.status,
       r.train_seconds, r.extract_seconds, r.device,
       (SELECT count(*) FROM image_embeddings e WHERE e.run_id = r.run_id) AS n_embeddings
FROM runs r LEFT JOIN datasets d USING (dataset_id)
ORDER BY r.started_at, r.run_id;
