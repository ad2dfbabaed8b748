-- Removes one dataset's labels, samples and row (ingest --replace, inside its transaction).
-- internal
-- param dataset_id VARCHAR: the dataset to remove
DELETE FROM labels WHERE dataset_id = $dataset_id;
DELETE FROM samples WHERE dataset_id = $dataset_id;
DELETE FROM datasets WHERE dataset_id = $dataset_id;
