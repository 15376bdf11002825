Feature: Outbound mail from tenants' own servers
  Accepted only from a tenant's outbound networks (or its SMTP AUTH users) and for its own
  domains, in the envelope and in the header From; filtered by rules with direction outbound or
  both. (The same Evaluation serves the outbound listener: tests/e2e/test_outbound.py.)

  Scenario: acme's server sends to any domain
    Given a message from "bob@acme.example" to "partner@example.org"
    And the client address 198.51.100.25
    When it is sent outbound
    Then it is delivered

  Scenario: a client outside acme's networks cannot send as acme
    Given a message from "bob@acme.example" to "partner@example.org"
    And the client address 192.0.2.99
    When it is sent outbound
    Then it is rejected with 550
    And the reply mentions "relaying denied"

  Scenario: acme's outbound network is also on its allow list: rules are reported, not applied
    # 198.51.100.0/24 is both acme's outbound.networks and an acme-allow entry, so the allow list
    # wins (DESIGN.md precedence 3) even for GTUBE, a direction: both rule.
    Given a message from "bob@acme.example" to "partner@example.org"
    And the client address 198.51.100.25
    And the body contains "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
    When it is sent outbound
    Then it is delivered
    And rule "gtube" matched
    And list "acme-allow" matched

  Scenario: inbound-only rules do not apply to outbound mail
    Given a message from "bob@acme.example" to "partner@example.org"
    And the client address 198.51.100.25
    And the subject "Overdue invoice 4711"
    When it is sent outbound
    Then rule "invoice-phish" did not match
    And it is delivered

  Scenario: acme's server cannot send as another tenant in the envelope
    Given a message from "ceo@globex.example" to "partner@example.org"
    And the client address 198.51.100.25
    When it is sent outbound
    Then it is refused at MAIL
    And it is rejected with 550
    And the reply mentions "sender address not allowed: globex.example"

  Scenario: acme's server cannot send as another tenant in the header From
    Given a message from "bob@acme.example" to "partner@example.org"
    And the header "From" is "CEO <ceo@globex.example>"
    And the client address 198.51.100.25
    When it is sent outbound
    Then it is refused at DATA
    And the reply mentions "header From not allowed: globex.example"

  Scenario: a bounce (null sender) from acme's server is acme's
    Given a message with the null sender to "partner@example.org"
    And the header "From" is "MAILER-DAEMON@acme.example"
    And the client address 198.51.100.25
    When it is sent outbound
    Then it is delivered

  Scenario: an SMTP AUTH user of globex sends as globex from anywhere, and only as globex
    Given a message from "ceo@globex-corp.example" to "partner@example.org"
    And the client authenticated as a user of tenant "globex"
    And the client address 192.0.2.99
    When it is sent outbound
    Then it is delivered
    And it is delivered to "mx:example.org"

  Scenario: an SMTP AUTH user of globex cannot send as acme, even from acme's network
    Given a message from "bob@acme.example" to "partner@example.org"
    And the client authenticated as a user of tenant "globex"
    And the client address 198.51.100.25
    When it is sent outbound
    Then it is rejected with 550
    And the reply mentions "sender address not allowed: acme.example"

  Scenario: outbound GTUBE from a server that is not on an allow list is rejected
    Given a message from "ceo@globex.example" to "partner@example.org"
    And the client authenticated as a user of tenant "globex"
    And the body contains "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
    When it is sent outbound
    Then it is rejected with 550
    And rule "gtube" matched

  Scenario: DNS answers declared by a scenario are served by the static resolver
    Given DNS answers TXT "v=spf1 ip4:192.0.2.0/24 -all" for "x.example"
    And the client address 192.0.2.1
    And a message from "a@x.example" to "bob@acme.example"
    When it is received
    Then it is delivered
