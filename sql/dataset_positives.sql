-- Positive labels (labels.positive: value 1, or No Finding derived) of one dataset's samples.
-- internal
-- param dataset_id VARCHAR: the dataset
SELECT sample_id, label FROM labels WHERE dataset_id = $dataset_id AND positive;
