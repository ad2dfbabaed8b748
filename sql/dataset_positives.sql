-- Positive (value = 1) labels of one dataset's samples.
-- internal
-- param dataset_id VARCHAR: the dataset
SELECT sample_id, label FROM labels WHERE dataset_id = $dataset_id AND value = 1;
