package arn

import "testing"

func TestStageID(t *testing.T) {
	tests := []struct{ in, want string }{
		{"arn:aws:ivs:us-east-1:123456789012:stage/AbCdEf123456", "AbCdEf123456"},
		{"arn:aws:ivs:us-east-1:123456789012:public-key/AbCdEf123456", ""},
		{"arn:aws:ivs:us-east-1:123456789012:stage/", ""},
		{"stage/AbCd", ""},
		{"", ""},
	}
	for _, tt := range tests {
		if got := StageID(tt.in); got != tt.want {
			t.Errorf("StageID(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestRegion(t *testing.T) {
	for in, want := range map[string]string{
		"arn:aws:ivs:eu-west-1:123456789012:stage/x": "eu-west-1",
		"arn:aws:ivs::123:stage/x":                   "",
		"not an arn":                                 "",
		"arn:aws:ivs":                                "",
	} {
		if got := Region(in); got != want {
			t.Errorf("Region(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestPatterns(t *testing.T) {
	if !PublicKeyPattern.MatchString("arn:aws:ivs:eu-west-1:1:public-key/k-1") || PublicKeyPattern.MatchString("arn:aws:ivs:eu-west-1:1:stage/k") {
		t.Error("PublicKeyPattern tells public keys from stages wrongly")
	}
	if StagePattern.MatchString("arn:aws:ivs:us-east-1:123456789012:stage/a b") {
		t.Error("StagePattern takes a space")
	}
}
