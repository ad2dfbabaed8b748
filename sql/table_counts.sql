-- Row count of every table in the store.
-- internal
SELECT 'datasets' AS table_name, count(*) AS n_rows FROM datasets
UNION ALL SELECT 'samples', count(*) FROM samples
UNION ALL SELECT 'labels', count(*) FROM labels
UNION ALL SELECT 'label_names', count(*) FROM label_names
UNION ALL SELECT 'runs', count(*) FROM runs
UNION ALL SELECT 'image_embeddings', count(*) FROM image_embeddings
UNION ALL SELECT 'text_embeddings', count(*) FROM text_embeddings
UNION ALL SELECT 'report_embeddings', count(*) FROM report_embeddings
UNION ALL SELECT 'scores', count(*) FROM scores
UNION ALL SELECT 'metrics', count(*) FROM metrics
UNION ALL SELECT 'gradcam', count(*) FROM gradcam
UNION ALL SELECT 'manifest', count(*) FROM manifest;
