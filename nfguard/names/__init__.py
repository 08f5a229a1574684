"""DNS, one concern: what the host's answers teach (cache, learner, resolvers, peers) and
which questions its clients may ask (queries).

- cache: which names an address stands for now (NameCache);
- learner: DNS answers read before they are accepted (UDP, TCP streams, CNAME chains);
- resolvers: whose answers teach, and the "@resolvers" of the rules;
- peers: what one worker learnt, told to the others;
- queries: every query a client sends, judged by its name before it leaves.
"""
