-- Names of the datasets in the store.
-- internal
SELECT name FROM datasets ORDER BY name;
