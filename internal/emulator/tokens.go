package emulator

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// tokenClaims are the claims of an IVS participant token, whether the service
// or the customer signed it.
type tokenClaims struct {
	jwt.RegisteredClaims
	Resource     string            `json:"resource"`
	Topic        string            `json:"topic"`
	EventsURL    string            `json:"events_url"`
	WhipURL      string            `json:"whip_url"`
	Capabilities tokenCapabilities `json:"capabilities"`
	UserID       string            `json:"user_id,omitempty"`
	Attributes   map[string]string `json:"attributes,omitempty"`
	Version      string            `json:"version"`
}

type tokenCapabilities struct {
	AllowPublish   bool `json:"allow_publish"`
	AllowSubscribe bool `json:"allow_subscribe"`
}

// serviceKeyID is the kid of tokens CreateParticipantToken signs.
const serviceKeyID = "ivs-emulator-service-key"

const defaultTokenMinutes = 720

type participantTokenJSON struct {
	ParticipantID  string            `json:"participantId"`
	Token          string            `json:"token"`
	UserID         string            `json:"userId,omitempty"`
	Attributes     map[string]string `json:"attributes,omitempty"`
	Duration       int               `json:"duration"`
	Capabilities   []string          `json:"capabilities"`
	ExpirationTime string            `json:"expirationTime"`
}

// issueToken signs a token for stage s the way CreateParticipantToken does.
func (e *Emulator) issueToken(s *stage, c participantTokenConfig) (participantTokenJSON, *apiError) {
	minutes := defaultTokenMinutes
	if c.Duration != nil {
		minutes = *c.Duration
	}
	caps := c.Capabilities
	if caps == nil {
		caps = []string{"PUBLISH", "SUBSCRIBE"}
	}
	now := e.now()
	exp := now.Add(time.Duration(minutes) * time.Minute)
	id := randomID(12)
	claims := tokenClaims{
		RegisteredClaims: jwt.RegisteredClaims{
			ID:        id,
			IssuedAt:  jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(exp),
		},
		Resource:  s.arn,
		Topic:     s.id,
		EventsURL: eventsEndpoint,
		WhipURL:   whipEndpoint,
		Capabilities: tokenCapabilities{
			AllowPublish:   slices.Contains(caps, "PUBLISH"),
			AllowSubscribe: slices.Contains(caps, "SUBSCRIBE"),
		},
		UserID:     c.UserID,
		Attributes: c.Attributes,
		Version:    "1.0",
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodES384, claims)
	tok.Header["kid"] = serviceKeyID
	signed, err := tok.SignedString(e.signer)
	if err != nil {
		return participantTokenJSON{}, newError(errInternal, "signing token: %v", err)
	}
	return participantTokenJSON{
		ParticipantID:  id,
		Token:          signed,
		UserID:         c.UserID,
		Attributes:     c.Attributes,
		Duration:       minutes,
		Capabilities:   caps,
		ExpirationTime: isoTime(exp),
	}, nil
}

func (e *Emulator) createParticipantToken(body []byte) (any, *apiError) {
	in, aerr := decode[struct {
		StageArn string `json:"stageArn"`
		participantTokenConfig
	}](body)
	if aerr != nil {
		return nil, aerr
	}
	s, aerr := e.stageByArn(in.StageArn)
	if aerr != nil {
		return nil, aerr
	}
	tok, aerr := e.issueToken(s, in.participantTokenConfig)
	if aerr != nil {
		return nil, aerr
	}
	return map[string]any{"participantToken": tok}, nil
}

// grant is what a verified token lets its bearer do.
type grant struct {
	stage         *stage
	participantID string
	userID        string
	attributes    map[string]string
	caps          tokenCapabilities
}

// validParticipantID checks an id against the API model's ParticipantId
// shape (and not empty): the model stays the one source of the rule.
func validParticipantID(id string) bool {
	return id != "" && checkShape("ParticipantId", "jti", id) == nil
}

// verifyToken checks a participant token as the service does when it is used
// to join: signature by the service or an imported key, and expiry. It
// takes e.mu only to look up the key, so that joins verify their
// signatures (about half a millisecond of CPU each for ES384) in parallel;
// grantFor then checks the stage under the lock.
func (e *Emulator) verifyToken(raw string) (*tokenClaims, *apiError) {
	var claims tokenClaims
	_, err := jwt.ParseWithClaims(raw, &claims, e.lockedTokenKey,
		jwt.WithValidMethods([]string{jwt.SigningMethodES384.Alg()}),
		jwt.WithExpirationRequired(),
		jwt.WithTimeFunc(e.now),
	)
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return nil, newError(errAccessDenied, "token expired at %s", claims.ExpiresAt.UTC().Format(time.RFC3339))
	case err != nil:
		return nil, newError(errAccessDenied, "token rejected: %v", err)
	}
	if !validParticipantID(claims.ID) {
		return nil, newError(errAccessDenied, "token jti %q is not a valid participant id", claims.ID)
	}
	return &claims, nil
}

// grantFor is what verified claims allow; e.mu is held.
func (e *Emulator) grantFor(claims *tokenClaims) (*grant, *apiError) {
	s, ok := e.st.stages[claims.Resource]
	if !ok {
		return nil, notFound("token names stage %q, which does not exist", claims.Resource)
	}
	if claims.Topic != "" && claims.Topic != s.id {
		return nil, newError(errAccessDenied, "token topic %q does not match its resource %s", claims.Topic, s.arn)
	}
	return &grant{
		stage:         s,
		participantID: claims.ID,
		userID:        claims.UserID,
		attributes:    claims.Attributes,
		caps:          claims.Capabilities,
	}, nil
}

func (e *Emulator) lockedTokenKey(t *jwt.Token) (any, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	kid, _ := t.Header["kid"].(string)
	if kid == serviceKeyID {
		return &e.signer.PublicKey, nil
	}
	k, ok := e.st.keys[kid]
	if !ok {
		return nil, fmt.Errorf("kid %q is not an imported public key", kid)
	}
	return k.key, nil
}

type publicKeyJSON struct {
	Arn               string            `json:"arn"`
	Name              string            `json:"name"`
	PublicKeyMaterial string            `json:"publicKeyMaterial,omitempty"`
	Fingerprint       string            `json:"fingerprint,omitempty"`
	Tags              map[string]string `json:"tags"`
}

func (k *publicKey) json(full bool) publicKeyJSON {
	out := publicKeyJSON{Arn: k.arn, Name: k.name, Tags: cloneTags(k.tags)}
	if full {
		out.PublicKeyMaterial = k.material
		out.Fingerprint = k.fingerprint
	}
	return out
}

// parseP384 accepts what IVS accepts for self-signed tokens: a PEM-encoded
// ECDSA P-384 public key.
func parseP384(material string) (*ecdsa.PublicKey, []byte, error) {
	start := strings.Index(material, "-----BEGIN PUBLIC KEY-----")
	if start < 0 {
		return nil, nil, errors.New("no PEM public key block")
	}
	block, _ := pem.Decode([]byte(material[start:]))
	if block == nil {
		return nil, nil, errors.New("the PEM block does not decode")
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("not a public key: %w", err)
	}
	ec, ok := pub.(*ecdsa.PublicKey)
	if !ok || ec.Curve != elliptic.P384() {
		return nil, nil, errors.New("the key must be an ECDSA key on curve P-384 (secp384r1)")
	}
	return ec, block.Bytes, nil
}

func (e *Emulator) importPublicKey(body []byte) (any, *apiError) {
	in, aerr := decode[struct {
		PublicKeyMaterial string            `json:"publicKeyMaterial"`
		Name              string            `json:"name"`
		Tags              map[string]string `json:"tags"`
	}](body)
	if aerr != nil {
		return nil, aerr
	}
	key, der, err := parseP384(in.PublicKeyMaterial)
	if err != nil {
		return nil, validationError("publicKeyMaterial: %v", err)
	}
	sum := sha256.Sum256(der)
	fp := hex.EncodeToString(sum[:])
	for _, k := range e.st.keys {
		if k.fingerprint == fp {
			return nil, newError(errConflict, "public key already imported as %s", k.arn)
		}
	}
	k := &publicKey{
		seq:         e.st.next(),
		arn:         "arn:aws:ivs:" + e.cfg.Region + ":" + e.cfg.AccountID + ":public-key/" + randomID(12),
		name:        in.Name,
		material:    in.PublicKeyMaterial,
		fingerprint: fp,
		tags:        maps.Clone(in.Tags),
		key:         key,
	}
	e.st.keys[k.arn] = k
	return map[string]any{"publicKey": k.json(true)}, nil
}

func (e *Emulator) keyByArn(arn string) (*publicKey, *apiError) {
	k, ok := e.st.keys[arn]
	if !ok {
		return nil, notFound("Public key not found: %s", arn)
	}
	return k, nil
}

func (e *Emulator) getPublicKey(body []byte) (any, *apiError) {
	in, aerr := decode[arnInput](body)
	if aerr != nil {
		return nil, aerr
	}
	k, aerr := e.keyByArn(in.Arn)
	if aerr != nil {
		return nil, aerr
	}
	return map[string]any{"publicKey": k.json(true)}, nil
}

func (e *Emulator) deletePublicKey(body []byte) (any, *apiError) {
	in, aerr := decode[arnInput](body)
	if aerr != nil {
		return nil, aerr
	}
	if _, aerr := e.keyByArn(in.Arn); aerr != nil {
		return nil, aerr
	}
	delete(e.st.keys, in.Arn)
	return struct{}{}, nil
}

func (e *Emulator) listPublicKeys(body []byte) (any, *apiError) {
	in, aerr := decode[listInput](body)
	if aerr != nil {
		return nil, aerr
	}
	all := slices.Collect(maps.Values(e.st.keys))
	slices.SortFunc(all, func(a, b *publicKey) int { return int(a.seq - b.seq) })
	items, next, aerr := page(all, func(k *publicKey) int64 { return k.seq }, in.NextToken, in.MaxResults)
	if aerr != nil {
		return nil, aerr
	}
	out := make([]publicKeyJSON, len(items))
	for i, k := range items {
		out[i] = k.json(false)
	}
	return withNext(map[string]any{"publicKeys": out}, next), nil
}

// withNext adds nextToken to a list response when there is a next page.
func withNext(resp map[string]any, next *string) map[string]any {
	if next != nil {
		resp["nextToken"] = *next
	}
	return resp
}
