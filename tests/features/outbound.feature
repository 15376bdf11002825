Feature: Outbound mail from tenants' own servers
  Accepted only from a tenant's outbound networks and for its own domains; filtered by rules
  with direction outbound or both.

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

  Scenario: DNS answers declared by a scenario are served by the static resolver
    Given DNS answers TXT "v=spf1 ip4:192.0.2.0/24 -all" for "x.example"
    And the client address 192.0.2.1
    And a message from "a@x.example" to "bob@acme.example"
    When it is received
    Then it is delivered
