-- The labels one dataset uses, in label_names order.
-- internal
-- param dataset_id VARCHAR: the dataset
SELECT DISTINCT l.label, n.position
FROM labels l JOIN label_names n USING (label)
WHERE l.dataset_id = $dataset_id
ORDER BY n.position;
