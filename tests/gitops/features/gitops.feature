Feature: The GitOps loop of a policy repository
  A policy change is a pull request: it is validated, its scenarios run, `plan` shows what it
  changes and to which messages, and held mail becomes policy with `quarantine promote`.

  Scenario: a repository made by init passes validate and test immediately
    Given a new policy repository made by "liveprism init"
    When I run "liveprism validate policies"
    Then the command succeeds
    When I run "liveprism test ."
    Then the command succeeds
    And the output says "6 passed"

  Scenario: plan reports an added rule, the corpus message it flips, and a removed list entry
    Given the example policy repository
    And this rule is added to the rules of "policies/rules/acme-content.yaml":
      """
      - id: lunch-invitation
        description: Lunch invitations are rejected (a test change)
        when:
          header: {name: Subject, regex: '(?i)\blunch\b'}
        then: {action: reject}
      """
    And "billing@partner.example" is removed from "policies/lists/acme-allow.yaml"
    When I run "liveprism plan policies --base main"
    Then the command succeeds
    And the output says "rule added: lunch-invitation  policies/rules/acme-content.yaml:14"
    And the output says "clean.eml: deliver -> reject (+lunch-invitation)"
    And the output says "list changed: acme-allow  policies/lists/acme-allow.yaml:2"
    And the output says "senders: -1 (billing@partner.example)"
    And the output says "partner-invoice.eml: deliver -> quarantine (-acme-allow)"

  Scenario Outline: promote keeps every line outside the edited entry byte for byte
    Given the example policy repository
    And a held message for acme from "<sender>" at <ip>
    When I promote it with "<option>"
    Then the command succeeds
    And in "<file>" only this line changed:
      | before   | after   |
      | <before> | <after> |
    And "liveprism validate policies" succeeds
    When I promote it with "<option>"
    Then the command fails saying "is already in"

    Examples:
      | option                              | sender              | ip         | file                            | before                                           | after                                                               |
      | --block-sender                      | promo@spammy.example | 192.0.2.7  | policies/lists/global-block.yaml | senders: [spammer@bad.example, "*@spam.example"] | senders: [spammer@bad.example, "*@spam.example", promo@spammy.example] |
      | --block-domain --list globex-block  | promo@spammy.example | 192.0.2.7  | policies/lists/globex-block.yaml | domains: [newsletter-spam.example]                | domains: [newsletter-spam.example, spammy.example]                   |
      | --block-network                     | promo@spammy.example | 198.18.0.9 | policies/lists/global-block.yaml | networks: [203.0.113.0/24, "2001:db8:bad::/48"]  | networks: [203.0.113.0/24, "2001:db8:bad::/48", 198.18.0.9]          |
