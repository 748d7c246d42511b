DROP TABLE blocked_items;
