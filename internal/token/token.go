// Package token issues IVS real-time participant tokens: self-signed ES384
// JWTs (no AWS call, no quota) or, as a fallback, through
// CreateParticipantToken.
package token

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Request describes one participant token.
type Request struct {
	StageArn      string
	ParticipantID string
	UserID        string
	Attributes    map[string]string
	Publish       bool
	Subscribe     bool
	TTL           time.Duration
}

// Token is an issued participant token.
type Token struct {
	Token         string
	ParticipantID string
	ExpiresAt     time.Time
}

// Issuer issues participant tokens.
type Issuer interface {
	Issue(ctx context.Context, req Request) (Token, error)
}

// IVS's global endpoints, which self-signed tokens name as IVS's do.
const (
	EventsURL = "wss://global.events.live-video.net"
	WhipURL   = "https://global.whip.live-video.net"
)

type claims struct {
	jwt.RegisteredClaims
	Resource     string            `json:"resource"`
	Topic        string            `json:"topic"`
	EventsURL    string            `json:"events_url"`
	WhipURL      string            `json:"whip_url"`
	Capabilities capabilities      `json:"capabilities"`
	UserID       string            `json:"user_id,omitempty"`
	Attributes   map[string]string `json:"attributes,omitempty"`
	Version      string            `json:"version"`
}

type capabilities struct {
	AllowPublish   bool `json:"allow_publish"`
	AllowSubscribe bool `json:"allow_subscribe"`
}

// SelfSigned signs tokens with a private key whose public half was
// registered with ImportPublicKey.
type SelfSigned struct {
	// keyArn changes when the public key is imported again (IVS lost it).
	keyArn atomic.Pointer[string]
	key    *ecdsa.PrivateKey
	now    func() time.Time
}

// NewSelfSigned returns an issuer for the imported key keyArn.
func NewSelfSigned(keyArn string, key *ecdsa.PrivateKey) (*SelfSigned, error) {
	if key == nil || key.Curve != elliptic.P384() {
		return nil, errors.New("token signing key must be ECDSA P-384 (IVS accepts no other)")
	}
	if keyArn == "" {
		return nil, errors.New("token signing key needs the ARN IVS gave its public key")
	}
	s := &SelfSigned{key: key, now: time.Now}
	s.keyArn.Store(&keyArn)
	return s, nil
}

// KeyArn is the ARN of the imported public key tokens name now.
func (s *SelfSigned) KeyArn() string { return *s.keyArn.Load() }

// SetKeyArn makes tokens from now on name arn: the same public key,
// imported again.
func (s *SelfSigned) SetKeyArn(arn string) { s.keyArn.Store(&arn) }

// PublicKeyPEM is the public half of the signing key, as ImportPublicKey
// takes it.
func (s *SelfSigned) PublicKeyPEM() (string, error) { return PublicKeyPEM(s.key) }

// Issue signs a token; it never blocks on the network.
func (s *SelfSigned) Issue(_ context.Context, req Request) (Token, error) {
	stageID, err := StageID(req.StageArn)
	if err != nil {
		return Token{}, err
	}
	now := s.now()
	c := claims{
		RegisteredClaims: jwt.RegisteredClaims{
			ID:        req.ParticipantID,
			IssuedAt:  jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(now.Add(req.TTL)),
		},
		Resource:     req.StageArn,
		Topic:        stageID,
		EventsURL:    EventsURL,
		WhipURL:      WhipURL,
		Capabilities: capabilities{AllowPublish: req.Publish, AllowSubscribe: req.Subscribe},
		UserID:       req.UserID,
		Attributes:   req.Attributes,
		Version:      "1.0",
	}
	t := jwt.NewWithClaims(jwt.SigningMethodES384, c)
	t.Header["kid"] = s.KeyArn()
	signed, err := t.SignedString(s.key)
	if err != nil {
		return Token{}, fmt.Errorf("sign participant token: %w", err)
	}
	return Token{Token: signed, ParticipantID: req.ParticipantID, ExpiresAt: c.ExpiresAt.Time}, nil
}

// StageID returns the id part of a stage ARN.
func StageID(stageArn string) (string, error) {
	i := strings.LastIndex(stageArn, ":stage/")
	if i < 0 || i+len(":stage/") == len(stageArn) {
		return "", fmt.Errorf("%q is not a stage ARN", stageArn)
	}
	return stageArn[i+len(":stage/"):], nil
}

// ParsePrivateKey reads a PEM-encoded ECDSA P-384 private key (SEC 1 "EC
// PRIVATE KEY" or PKCS #8 "PRIVATE KEY"). An "EC PARAMETERS" block before
// it, as `openssl ecparam -genkey` writes without -noout, is skipped.
func ParsePrivateKey(pemBytes []byte) (*ecdsa.PrivateKey, error) {
	block, rest := pem.Decode(pemBytes)
	for block != nil && block.Type == "EC PARAMETERS" {
		block, rest = pem.Decode(rest)
	}
	if block == nil {
		return nil, errors.New("no PEM block in the private key file")
	}
	var key any
	var err error
	switch block.Type {
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	}
	if err != nil {
		return nil, fmt.Errorf("parse private key: %w", err)
	}
	ec, ok := key.(*ecdsa.PrivateKey)
	if !ok || ec.Curve != elliptic.P384() {
		return nil, errors.New("private key must be ECDSA P-384")
	}
	return ec, nil
}

// PublicKeyPEM encodes the public half of key for ImportPublicKey.
func PublicKeyPEM(key *ecdsa.PrivateKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return "", err
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})), nil
}
