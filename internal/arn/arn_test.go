package arn

import "testing"

func TestStagePattern(t *testing.T) {
	for in, want := range map[string]bool{
		"arn:aws:ivs:us-east-1:123456789012:stage/AbCdEf123456":      true,
		"arn:aws:ivs:us-east-1:123456789012:public-key/AbCdEf123456": false,
		"arn:aws:ivs:us-east-1:123456789012:stage/":                  false,
		"stage/AbCd": false,
		"":           false,
	} {
		if got := StagePattern.MatchString(in); got != want {
			t.Errorf("StagePattern matches %q: %v, want %v", in, got, want)
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
