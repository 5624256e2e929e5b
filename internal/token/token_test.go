package token_test

import (
	"bytes"
	"cmp"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ivsrealtime"
	"github.com/golang-jwt/jwt/v5"

	"github.com/stagefleet/stagefleet/internal/emulator"
	"github.com/stagefleet/stagefleet/internal/token"
)

const (
	testKeyArn   = "arn:aws:ivs:us-east-1:123456789012:public-key/abcdEFGH1234"
	testStageArn = "arn:aws:ivs:us-east-1:123456789012:stage/AbCdEf123456"
	testStageID  = "AbCdEf123456"
)

func newKey(t testing.TB, c elliptic.Curve) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(c, rand.Reader)
	if err != nil {
		t.Fatalf("GenerateKey: %v", err)
	}
	return k
}

func newIssuer(t testing.TB, keyArn string, key *ecdsa.PrivateKey) *token.SelfSigned {
	t.Helper()
	iss, err := token.NewSelfSigned(keyArn, key)
	if err != nil {
		t.Fatalf("NewSelfSigned: %v", err)
	}
	return iss
}

// segment decodes one base64url part of a JWT into a JSON object.
func segment(t *testing.T, part string) map[string]any {
	t.Helper()
	raw, err := base64.RawURLEncoding.DecodeString(part)
	if err != nil {
		t.Fatalf("JWT segment is not base64url: %v", err)
	}
	var m map[string]any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		t.Fatalf("JWT segment is not a JSON object: %v (%s)", err, raw)
	}
	return m
}

func number(t *testing.T, v any, name string) int64 {
	t.Helper()
	n, ok := v.(json.Number)
	if !ok {
		t.Fatalf("claim %s = %#v, want a number", name, v)
	}
	i, err := n.Int64()
	if err != nil {
		t.Fatalf("claim %s = %s, want whole seconds", name, n)
	}
	return i
}

// ivsClaims is what the emulator and IVS read from a token.
type ivsClaims struct {
	jwt.RegisteredClaims
	Resource     string `json:"resource"`
	Topic        string `json:"topic"`
	EventsURL    string `json:"events_url"`
	WhipURL      string `json:"whip_url"`
	Capabilities struct {
		AllowPublish   bool `json:"allow_publish"`
		AllowSubscribe bool `json:"allow_subscribe"`
	} `json:"capabilities"`
	UserID     string            `json:"user_id"`
	Attributes map[string]string `json:"attributes"`
	Version    string            `json:"version"`
}

func parseWith(raw string, pub *ecdsa.PublicKey) (*ivsClaims, error) {
	var c ivsClaims
	_, err := jwt.ParseWithClaims(raw, &c, func(*jwt.Token) (any, error) { return pub, nil },
		jwt.WithValidMethods([]string{"ES384"}), jwt.WithExpirationRequired(), jwt.WithIssuedAt())
	return &c, err
}

func TestSelfSignedIssue(t *testing.T) {
	key := newKey(t, elliptic.P384())
	iss := newIssuer(t, testKeyArn, key)
	tests := []struct {
		name string
		req  token.Request
	}{
		{"viewer", token.Request{
			StageArn: testStageArn, ParticipantID: "VIEWER123", UserID: "viewer-1",
			Attributes: map[string]string{"role": "viewer", "broadcastId": "default"},
			Subscribe:  true, TTL: time.Hour,
		}},
		{"host", token.Request{
			StageArn: testStageArn, ParticipantID: "HOST456", UserID: "host-1",
			Attributes: map[string]string{"role": "host"},
			Publish:    true, Subscribe: true, TTL: 12 * time.Hour,
		}},
		{"publish only, no user, no attributes", token.Request{
			StageArn: testStageArn, ParticipantID: "MEDIA789", Publish: true, TTL: 90 * time.Second,
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := time.Now().Truncate(time.Second)
			tok, err := iss.Issue(context.Background(), tc.req)
			if err != nil {
				t.Fatalf("Issue: %v", err)
			}
			after := time.Now()
			if tok.ParticipantID != tc.req.ParticipantID {
				t.Errorf("ParticipantID = %q, want %q", tok.ParticipantID, tc.req.ParticipantID)
			}
			parts := strings.Split(tok.Token, ".")
			if len(parts) != 3 {
				t.Fatalf("token has %d parts, want 3: %q", len(parts), tok.Token)
			}

			header := segment(t, parts[0])
			if header["alg"] != "ES384" || header["kid"] != testKeyArn {
				t.Errorf("header = %v, want alg ES384 and kid %s", header, testKeyArn)
			}
			sig, err := base64.RawURLEncoding.DecodeString(parts[2])
			if err != nil || len(sig) != 96 {
				t.Errorf("signature is %d bytes (%v), want 96 (ES384 r||s)", len(sig), err)
			}

			claims := segment(t, parts[1])
			wantKeys := []string{"capabilities", "events_url", "exp", "iat", "jti", "resource", "topic", "version", "whip_url"}
			if tc.req.UserID != "" {
				wantKeys = append(wantKeys, "user_id")
			}
			if tc.req.Attributes != nil {
				wantKeys = append(wantKeys, "attributes")
			}
			slices.Sort(wantKeys)
			if got := slices.Sorted(maps.Keys(claims)); !slices.Equal(got, wantKeys) {
				t.Errorf("claims %v, want exactly %v", got, wantKeys)
			}
			wantStrings := map[string]string{
				"jti":        tc.req.ParticipantID,
				"resource":   testStageArn,
				"topic":      testStageID,
				"events_url": token.EventsURL,
				"whip_url":   token.WhipURL,
				"version":    "1.0",
			}
			if tc.req.UserID != "" {
				wantStrings["user_id"] = tc.req.UserID
			}
			for k, want := range wantStrings {
				if claims[k] != want {
					t.Errorf("claim %s = %#v, want %q", k, claims[k], want)
				}
			}
			caps, _ := claims["capabilities"].(map[string]any)
			if caps["allow_publish"] != tc.req.Publish || caps["allow_subscribe"] != tc.req.Subscribe || len(caps) != 2 {
				t.Errorf("capabilities = %v, want allow_publish %v, allow_subscribe %v", caps, tc.req.Publish, tc.req.Subscribe)
			}
			iat, exp := number(t, claims["iat"], "iat"), number(t, claims["exp"], "exp")
			if iat < before.Unix() || iat > after.Unix() {
				t.Errorf("iat %d, want the time of issue, within [%d, %d]", iat, before.Unix(), after.Unix())
			}
			if time.Duration(exp-iat)*time.Second != tc.req.TTL {
				t.Errorf("exp - iat = %ds, want the TTL %v", exp-iat, tc.req.TTL)
			}
			if !tok.ExpiresAt.Equal(time.Unix(exp, 0)) {
				t.Errorf("ExpiresAt = %v, want the exp claim %v", tok.ExpiresAt, time.Unix(exp, 0))
			}

			// Verifiable with the public key, and the claims read back.
			c, err := parseWith(tok.Token, &key.PublicKey)
			if err != nil {
				t.Fatalf("token does not verify with the public key: %v", err)
			}
			if c.ID != tc.req.ParticipantID || c.Resource != testStageArn || c.Topic != testStageID ||
				c.UserID != tc.req.UserID || !maps.Equal(c.Attributes, tc.req.Attributes) ||
				c.Capabilities.AllowPublish != tc.req.Publish || c.Capabilities.AllowSubscribe != tc.req.Subscribe {
				t.Errorf("parsed claims %+v do not match the request %+v", c, tc.req)
			}
		})
	}
}

func TestSelfSignedSignatureBindsKeyAndClaims(t *testing.T) {
	key := newKey(t, elliptic.P384())
	tok, err := newIssuer(t, testKeyArn, key).Issue(context.Background(), token.Request{
		StageArn: testStageArn, ParticipantID: "P1", Subscribe: true, TTL: time.Hour,
	})
	if err != nil {
		t.Fatalf("Issue: %v", err)
	}
	if _, err := parseWith(tok.Token, &newKey(t, elliptic.P384()).PublicKey); err == nil {
		t.Error("token verifies with another key")
	}
	// Swap the payload for one that grants publishing: the signature no
	// longer matches.
	parts := strings.Split(tok.Token, ".")
	raw, _ := base64.RawURLEncoding.DecodeString(parts[1])
	forged := bytes.Replace(raw, []byte(`"allow_publish":false`), []byte(`"allow_publish":true`), 1)
	if bytes.Equal(forged, raw) {
		t.Fatalf("payload has no allow_publish false: %s", raw)
	}
	parts[1] = base64.RawURLEncoding.EncodeToString(forged)
	if _, err := parseWith(strings.Join(parts, "."), &key.PublicKey); err == nil {
		t.Error("a token with a changed payload verifies")
	}
	// Two tokens for the same request differ (ECDSA signatures are
	// randomized) and both verify.
	again, err := newIssuer(t, testKeyArn, key).Issue(context.Background(), token.Request{
		StageArn: testStageArn, ParticipantID: "P1", Subscribe: true, TTL: time.Hour,
	})
	if err != nil {
		t.Fatalf("Issue: %v", err)
	}
	if again.Token == tok.Token {
		t.Error("two signatures are identical")
	}
	if _, err := parseWith(again.Token, &key.PublicKey); err != nil {
		t.Errorf("second token: %v", err)
	}
}

func TestSelfSignedIssueRefusesNonStageArn(t *testing.T) {
	iss := newIssuer(t, testKeyArn, newKey(t, elliptic.P384()))
	for _, a := range []string{"", "not-an-arn", "arn:aws:ivs:us-east-1:123456789012:channel/abc", "arn:aws:ivs:us-east-1:123456789012:stage/"} {
		if tok, err := iss.Issue(context.Background(), token.Request{StageArn: a, ParticipantID: "P1", Subscribe: true, TTL: time.Hour}); err == nil {
			t.Errorf("Issue for stage %q = %q, want an error", a, tok.Token)
		}
	}
}

func TestNewSelfSigned(t *testing.T) {
	p384 := newKey(t, elliptic.P384())
	tests := []struct {
		name   string
		keyArn string
		key    *ecdsa.PrivateKey
		ok     bool
	}{
		{"P-384 with an ARN", testKeyArn, p384, true},
		{"P-256", testKeyArn, newKey(t, elliptic.P256()), false},
		{"P-521", testKeyArn, newKey(t, elliptic.P521()), false},
		{"empty ARN", "", p384, false},
		{"no key", testKeyArn, nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			iss, err := token.NewSelfSigned(tc.keyArn, tc.key)
			if tc.ok != (err == nil) || tc.ok != (iss != nil) {
				t.Fatalf("NewSelfSigned = %v, %v; want ok %v", iss, err, tc.ok)
			}
			if !tc.ok && err.Error() == "" {
				t.Fatal("refused without a message")
			}
		})
	}
}

func TestStageID(t *testing.T) {
	tests := []struct {
		arn  string
		id   string
		fail bool
	}{
		{arn: testStageArn, id: testStageID},
		{arn: "arn:aws:ivs:eu-west-1:000000000000:stage/x", id: "x"},
		{arn: "arn:aws-cn:ivs:cn-north-1:123456789012:stage/abc-DEF_1", id: "abc-DEF_1"},
		{arn: "", fail: true},
		{arn: "AbCdEf123456", fail: true},
		{arn: "stage/abc", fail: true},
		{arn: "arn:aws:ivs:us-east-1:123456789012:stage/", fail: true},
		{arn: "arn:aws:ivs:us-east-1:123456789012:channel/abc", fail: true},
		{arn: "arn:aws:ivs:us-east-1:123456789012:public-key/abc", fail: true},
	}
	for _, tc := range tests {
		id, err := token.StageID(tc.arn)
		if tc.fail {
			if err == nil {
				t.Errorf("StageID(%q) = %q, want an error", tc.arn, id)
			}
			continue
		}
		if err != nil || id != tc.id {
			t.Errorf("StageID(%q) = %q, %v; want %q", tc.arn, id, err, tc.id)
		}
	}
}

func FuzzStageID(f *testing.F) {
	for _, s := range []string{testStageArn, "", ":stage/", ":stage/x", "a:stage/b:stage/c", "arn:aws:ivs:::stage/\x00", "stage/abc"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, arn string) {
		id, err := token.StageID(arn)
		if err != nil {
			if id != "" {
				t.Fatalf("StageID(%q) failed but returned %q", arn, id)
			}
			return
		}
		if id == "" || !strings.HasSuffix(arn, ":stage/"+id) || strings.Contains(id, ":stage/") {
			t.Fatalf("StageID(%q) = %q, not the part after the last :stage/", arn, id)
		}
	})
}

func pemOf(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func sec1(t testing.TB, k *ecdsa.PrivateKey) []byte {
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatalf("MarshalECPrivateKey: %v", err)
	}
	return pemOf("EC PRIVATE KEY", der)
}

func pkcs8(t testing.TB, k any) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatalf("MarshalPKCS8PrivateKey: %v", err)
	}
	return pemOf("PRIVATE KEY", der)
}

func TestParsePrivateKey(t *testing.T) {
	p384 := newKey(t, elliptic.P384())
	p256 := newKey(t, elliptic.P256())
	rsaKey, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatalf("rsa.GenerateKey: %v", err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&p384.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	sec1DER, err := x509.MarshalECPrivateKey(p384)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		pem  []byte
		ok   bool
	}{
		{"SEC 1 P-384", sec1(t, p384), true},
		{"PKCS #8 P-384", pkcs8(t, p384), true},
		{"SEC 1 P-384 after text", append([]byte("the stagefleet key\n"), sec1(t, p384)...), true},
		// What `openssl ecparam -name secp384r1 -genkey` writes without -noout.
		{"SEC 1 P-384 after EC PARAMETERS", append(pemOf("EC PARAMETERS", []byte{0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22}), sec1(t, p384)...), true},
		{"EC PARAMETERS alone", pemOf("EC PARAMETERS", []byte{0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22}), false},
		{"SEC 1 P-256", sec1(t, p256), false},
		{"PKCS #8 P-256", pkcs8(t, p256), false},
		{"PKCS #8 RSA", pkcs8(t, rsaKey), false},
		{"PKCS #1 RSA", pemOf("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rsaKey)), false},
		{"the public key", pemOf("PUBLIC KEY", pubDER), false},
		{"truncated SEC 1 P-384", pemOf("EC PRIVATE KEY", sec1DER[:len(sec1DER)/2]), false},
		{"garbage in a PEM block", pemOf("EC PRIVATE KEY", []byte("not a key")), false},
		{"not PEM", []byte("-----BEGIN nothing"), false},
		{"empty", nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			k, err := token.ParsePrivateKey(tc.pem)
			if !tc.ok {
				if err == nil {
					t.Fatalf("ParsePrivateKey accepted it: %v", k)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParsePrivateKey: %v", err)
			}
			if !k.Equal(p384) {
				t.Fatal("ParsePrivateKey returned another key")
			}
		})
	}
}

func FuzzParsePrivateKey(f *testing.F) {
	p384 := newKey(f, elliptic.P384())
	f.Add(sec1(f, p384))
	f.Add(pkcs8(f, p384))
	f.Add(append(pemOf("EC PARAMETERS", []byte{0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22}), sec1(f, p384)...))
	f.Add(sec1(f, newKey(f, elliptic.P256())))
	f.Add(pemOf("EC PRIVATE KEY", []byte{0x30, 0x03, 0x02, 0x01, 0x01}))
	f.Add(pemOf("PRIVATE KEY", []byte{0x30, 0x80}))
	f.Add([]byte("-----BEGIN EC PRIVATE KEY-----\n-----END EC PRIVATE KEY-----\n"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		k, err := token.ParsePrivateKey(data)
		if err != nil {
			if k != nil {
				t.Fatal("ParsePrivateKey failed but returned a key")
			}
			return
		}
		if k.Curve != elliptic.P384() {
			t.Fatalf("ParsePrivateKey accepted a key on %s", k.Curve.Params().Name)
		}
		if _, err := token.NewSelfSigned(testKeyArn, k); err != nil {
			t.Fatalf("a parsed key is refused by NewSelfSigned: %v", err)
		}
	})
}

func TestPublicKeyPEM(t *testing.T) {
	key := newKey(t, elliptic.P384())
	out, err := token.PublicKeyPEM(key)
	if err != nil {
		t.Fatalf("PublicKeyPEM: %v", err)
	}
	block, rest := pem.Decode([]byte(out))
	if block == nil || block.Type != "PUBLIC KEY" || len(bytes.TrimSpace(rest)) != 0 {
		t.Fatalf("PublicKeyPEM = %q, want one PUBLIC KEY block", out)
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		t.Fatalf("ParsePKIXPublicKey: %v", err)
	}
	if ec, ok := pub.(*ecdsa.PublicKey); !ok || !ec.Equal(&key.PublicKey) {
		t.Fatalf("PublicKeyPEM round-trips to %#v, want the key's public half", pub)
	}
	// And the private key round-trips through ParsePrivateKey.
	back, err := token.ParsePrivateKey(pkcs8(t, key))
	if err != nil || !back.Equal(key) {
		t.Fatalf("ParsePrivateKey(PKCS #8 of the key) = %v", err)
	}
}

// TestSelfSignedTokenJoinsEmulator imports the public key into the emulator
// through the AWS SDK, as stagefleet does, and joins a stage with tokens
// signed here.
func TestSelfSignedTokenJoinsEmulator(t *testing.T) {
	emu, err := emulator.New(emulator.DefaultConfig())
	if err != nil {
		t.Fatalf("emulator.New: %v", err)
	}
	srv := httptest.NewServer(emu.Handler())
	t.Cleanup(func() {
		srv.Close()
		emu.Close()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client := ivsrealtime.New(ivsrealtime.Options{
		Region:       "us-east-1",
		BaseEndpoint: aws.String(srv.URL),
		Credentials:  credentials.NewStaticCredentialsProvider("AKIDTEST", "secret", ""),
		Retryer:      aws.NopRetryer{},
	})

	key := newKey(t, elliptic.P384())
	material, err := token.PublicKeyPEM(key)
	if err != nil {
		t.Fatalf("PublicKeyPEM: %v", err)
	}
	imported, err := client.ImportPublicKey(ctx, &ivsrealtime.ImportPublicKeyInput{
		Name:              aws.String("stagefleet-test"),
		PublicKeyMaterial: aws.String(material),
	})
	if err != nil {
		t.Fatalf("ImportPublicKey: %v", err)
	}
	keyArn := aws.ToString(imported.PublicKey.Arn)
	created, err := client.CreateStage(ctx, &ivsrealtime.CreateStageInput{Name: aws.String("token-test")})
	if err != nil {
		t.Fatalf("CreateStage: %v", err)
	}
	stageArn := aws.ToString(created.Stage.Arn)

	iss := newIssuer(t, keyArn, key)
	issue := func(t *testing.T, iss *token.SelfSigned, req token.Request) string {
		t.Helper()
		req.StageArn = cmp.Or(req.StageArn, stageArn)
		tok, err := iss.Issue(ctx, req)
		if err != nil {
			t.Fatalf("Issue: %v", err)
		}
		return tok.Token
	}
	control := func(t *testing.T, path string, body any) (int, map[string]any) {
		t.Helper()
		b, _ := json.Marshal(body)
		resp, err := http.Post(srv.URL+path, "application/json", bytes.NewReader(b))
		if err != nil {
			t.Fatalf("POST %s: %v", path, err)
		}
		defer resp.Body.Close()
		var out map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, out
	}
	join := func(t *testing.T, tok string) (int, map[string]any) {
		t.Helper()
		return control(t, "/_emulator/participants/join", map[string]string{"token": tok})
	}

	t.Run("viewer joins, cannot publish", func(t *testing.T) {
		tok := issue(t, iss, token.Request{ParticipantID: "VIEWER1", UserID: "viewer-1", Attributes: map[string]string{"role": "viewer"}, Subscribe: true, TTL: time.Hour})
		status, out := join(t, tok)
		if status != http.StatusOK || out["participantId"] != "VIEWER1" || out["stageArn"] != stageArn || out["sessionId"] == "" {
			t.Fatalf("join = %d %v, want 200 with participant VIEWER1 on %s", status, out, stageArn)
		}
		status, _ = control(t, "/_emulator/participants/publish", map[string]string{"stageArn": stageArn, "participantId": "VIEWER1"})
		if status != http.StatusForbidden {
			t.Fatalf("publish with a subscribe-only token = %d, want 403", status)
		}
		var found bool
		for _, s := range emu.Snapshot().Stages {
			for _, ss := range s.Sessions {
				for _, p := range ss.Participants {
					if p.ParticipantID == "VIEWER1" {
						found = true
						if p.UserID != "viewer-1" || !p.CanSubscribe || p.CanPublish || p.State != "CONNECTED" {
							t.Errorf("emulator sees the viewer as %+v", p)
						}
					}
				}
			}
		}
		if !found {
			t.Error("the emulator's state has no participant VIEWER1")
		}
	})
	t.Run("host joins and publishes", func(t *testing.T) {
		tok := issue(t, iss, token.Request{ParticipantID: "HOST1", UserID: "host-1", Publish: true, Subscribe: true, TTL: time.Hour})
		if status, out := join(t, tok); status != http.StatusOK {
			t.Fatalf("join = %d %v", status, out)
		}
		if status, out := control(t, "/_emulator/participants/publish", map[string]string{"stageArn": stageArn, "participantId": "HOST1"}); status != http.StatusOK {
			t.Fatalf("publish = %d %v", status, out)
		}
	})

	// The emulator checks what it should: these it refuses.
	otherKey := newKey(t, elliptic.P384())
	refused := []struct {
		name   string
		token  func(t *testing.T) string
		status int
		reason string
	}{
		{"signed by a key that was not imported, under the imported key's ARN", func(t *testing.T) string {
			return issue(t, newIssuer(t, keyArn, otherKey), token.Request{ParticipantID: "FORGED1", Subscribe: true, TTL: time.Hour})
		}, http.StatusForbidden, "verification"},
		{"naming a key that was never imported", func(t *testing.T) string {
			return issue(t, newIssuer(t, "arn:aws:ivs:us-east-1:123456789012:public-key/nope", key), token.Request{ParticipantID: "UNKNOWN1", Subscribe: true, TTL: time.Hour})
		}, http.StatusForbidden, "not an imported public key"},
		{"expired", func(t *testing.T) string {
			return issue(t, iss, token.Request{ParticipantID: "LATE1", Subscribe: true, TTL: -time.Minute})
		}, http.StatusForbidden, "expired"},
		{"for a stage that does not exist", func(t *testing.T) string {
			return issue(t, iss, token.Request{StageArn: "arn:aws:ivs:us-east-1:123456789012:stage/NoSuchStage1", ParticipantID: "LOST1", Subscribe: true, TTL: time.Hour})
		}, http.StatusNotFound, "does not exist"},
	}
	for _, tc := range refused {
		t.Run("refuses a token "+tc.name, func(t *testing.T) {
			status, out := join(t, tc.token(t))
			msg, _ := out["message"].(string)
			if status != tc.status || !strings.Contains(msg, tc.reason) {
				t.Fatalf("join = %d %v, want %d saying %q", status, out, tc.status, tc.reason)
			}
		})
	}
}
