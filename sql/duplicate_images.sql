-- Groups of byte-identical images (same image_sha256) in one dataset: their samples, uids, files and splits, and whether the group crosses splits.
-- param dataset VARCHAR: the dataset's name
SELECT s.image_sha256,
       count(*) AS images,
       list(s.sample_id ORDER BY s.sample_id) AS sample_ids,
       list(s.uid ORDER BY s.sample_id) AS uids,
       list(s.filename ORDER BY s.sample_id) AS filenames,
       list(s.split ORDER BY s.sample_id) AS splits,
       count(DISTINCT s.split) > 1 AS crosses_splits
FROM samples s
WHERE s.dataset_id = (SELECT dataset_id FROM datasets WHERE name = $dataset)
GROUP BY s.image_sha256
HAVING count(*) > 1
ORDER BY min(s.sample_id);
