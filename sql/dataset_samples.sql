-- One dataset's samples with their image path, image sha256 and split, ordered by sample id.
-- internal
-- param dataset_id VARCHAR: the dataset
SELECT sample_id, path, image_sha256, split FROM samples WHERE dataset_id = $dataset_id ORDER BY sample_id;
