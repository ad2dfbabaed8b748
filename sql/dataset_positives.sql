-- Positive labels (labels.positive: value 1, or the normal label derived) of one dataset's samples; pairs left
-- out (positive NULL, `--uncertain ignore`) are not positives: sql/dataset_left_out.sql lists them.
-- internal
-- param dataset_id VARCHAR: the dataset
SELECT sample_id, label FROM labels WHERE dataset_id = $dataset_id AND positive;
