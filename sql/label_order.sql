-- Label names in the study's order.
-- internal
SELECT label FROM label_names ORDER BY position;
