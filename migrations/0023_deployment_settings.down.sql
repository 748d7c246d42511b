DROP TABLE deployment_settings;
