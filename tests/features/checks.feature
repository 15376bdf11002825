Feature: Sender-authentication checks in scenarios
  The checks run as in `serve` (the same runner), but every DNS question is answered by the
  scenario's `Given DNS answers …` steps, so results are testable offline.

  Background:
    Given the policy in "tests/features/policies/checks"

  Scenario: an SPF failure refuses the sender at MAIL when the policy says so
    Given DNS answers TXT "v=spf1 ip4:192.0.2.0/24 -all" for "bank.example"
    And a message from "ceo@bank.example" to "bob@acme.example"
    And the client address 203.0.113.50
    When it is received
    Then it is rejected with 550
    And it is refused at MAIL
    And the check result "spf:fail" was found

  Scenario: the same sender from its own network passes SPF and is delivered
    Given DNS answers TXT "v=spf1 ip4:192.0.2.0/24 -all" for "bank.example"
    And a message from "ceo@bank.example" to "bob@acme.example"
    And the client address 192.0.2.25
    When it is received
    Then it is delivered
    And the check result "spf:pass" was found

  Scenario: a DMARC p=reject domain that fails alignment is rejected after DATA
    Given DNS answers TXT "v=spf1 ip4:192.0.2.0/24 ~all" for "shop.example"
    And DNS answers TXT "v=DMARC1; p=reject" for "_dmarc.shop.example"
    And a message from "orders@shop.example" to "bob@acme.example"
    And the client address 203.0.113.50
    When it is received
    Then it is rejected with 550
    And the check result "dmarc:reject" was found
    And the check result "spf:softfail" was found

  Scenario: a DNS timeout is a temporary error, never a failure
    Given DNS fails with timeout for TXT "bank.example"
    And a message from "ceo@bank.example" to "bob@acme.example"
    And the client address 203.0.113.50
    When it is received
    Then it is delivered
    And the check result "spf:temperror" was found
