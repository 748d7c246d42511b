package ingest

var RequestSpecific = requestSpecific
