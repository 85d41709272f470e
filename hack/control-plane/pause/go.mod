module streamgroup.local/pause

go 1.22
