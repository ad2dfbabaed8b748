-- The report text of every sample of one dataset that has one (not blank), ordered by sample id.
-- internal
-- param dataset_id VARCHAR: the dataset
SELECT sample_id, report
FROM samples
WHERE dataset_id = $dataset_id AND report IS NOT NULL AND trim(report) <> ''
ORDER BY sample_id;
