module github.com/stagefleet/stagefleet

go 1.26.8

require (
	github.com/golang-jwt/jwt/v5 v5.3.1
	github.com/google/uuid v1.6.0
	golang.org/x/time v0.16.0
)
