Feature: Block and allow lists
  Gateway-wide block lists refuse at connect (networks) or MAIL (senders), tenant block lists at RCPT; an allow list delivers
  whatever the content rules say.

  Scenario Outline: the gateway-wide block list refuses a sender for every tenant
    Given a message from "<sender>" to "<rcpt>"
    When it is received
    Then it is rejected with 550
    And it is refused at MAIL
    And the reply mentions "global-block"

    Examples:
      | sender                   | rcpt                    |
      | spammer@bad.example      | bob@acme.example        |
      | anyone@spam.example      | sales@globex.example    |
      | offers@bad.example       | peter@initech.example   |
      | kit@mail.phish-kit.example | bob@acme.example      |

  Scenario Outline: the gateway-wide block list refuses client networks at connect
    Given a message from "alice@example.com" to "bob@acme.example"
    And the client address <ip>
    When it is received
    Then it is rejected with 550
    And it is refused at CONNECT

    Examples:
      | ip              |
      | 203.0.113.7     |
      | 203.0.113.250   |
      | 2001:db8:bad::1 |

  Scenario: a neighbour of a blocked network is accepted
    Given a message from "alice@example.com" to "bob@acme.example"
    And the client address 203.0.114.1
    When it is received
    Then it is delivered

  Scenario Outline: globex's own block list refuses at RCPT, for globex only
    Given a message from "<sender>" to "sales@globex.example"
    And the client address <ip>
    When it is received
    Then the recipient "sales@globex.example" is refused with 550
    And it is refused at RCPT
    And the reply mentions "globex-block"

    Examples:
      | sender                          | ip            |
      | sales@competitor.example        | 192.0.2.1     |
      | news@newsletter-spam.example    | 192.0.2.1     |
      | alice@example.com               | 192.0.2.200   |

  Scenario: globex's block list does not apply to acme
    Given a message from "sales@competitor.example" to "bob@acme.example"
    When it is received
    Then it is delivered

  Scenario Outline: acme's partners are delivered even when content rules fire
    Given a message from "<sender>" to "ap@acme.example"
    And the client address <ip>
    And the subject "Overdue invoice 1187"
    And the body contains "Please pay by wire transfer to our new account"
    When it is received
    Then it is delivered
    And rule "invoice-phish" matched
    And list "acme-allow" matched

    Examples:
      | sender                            | ip            |
      | billing@partner.example           | 192.0.2.1     |
      | ar@trusted-supplier.example       | 192.0.2.1     |
      | anyone@example.com                | 198.51.100.9  |

  Scenario: the allow list is acme's: globex quarantines the same lure by score
    Given a message from "billing@partner.example" to "sales@globex.example"
    And the subject "Overdue invoice 1187"
    And the body contains "We need the wire transfer today."
    When it is received
    Then it is tagged
    And rule "invoice-lure" matched
    And rule "invoice-phish" did not match
