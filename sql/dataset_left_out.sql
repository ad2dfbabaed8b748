-- The (sample, label) pairs of one dataset left out of its targets: labels.positive NULL, an uncertain
-- value under `--uncertain ignore` (and the normal label of a sample with such a finding and no positive one).
-- internal
-- param dataset_id VARCHAR: the dataset
SELECT sample_id, label FROM labels WHERE dataset_id = $dataset_id AND positive IS NULL;
