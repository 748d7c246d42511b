DROP TABLE forgotten_users;
